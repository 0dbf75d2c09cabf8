//! The migration commands against a live database: `info`, `validate`, `migrate`, `baseline`,
//! `repair`, `undo`, `clean`.
//!
//! A [`Runner`] is opened from a [`Config`]: it scans the locations (file errors come before
//! any connection), connects, works out the schemas, the history table and the placeholder
//! values, and then each command reads the history, asks [`crate::plan`] what to do and does
//! it. `migrate` applies one migration per transaction under Flyway's advisory lock, with the
//! history row in the same transaction, so a failure leaves no row and Flyway and Rampart
//! never run at the same time against one history.

use std::time::Instant;

use postgres::{Client, GenericClient};

use crate::config::{Config, PgUrl, parse_jdbc_url, redact_url};
use crate::db;
use crate::error::MigrateError;
use crate::placeholders::Placeholders;
use crate::plan::{self, AppliedRow, Info, Settings, Step, Target};
use crate::resolve::{self, Callback, Event, Found, Kind, Naming, Script};
use crate::sql::{self, Statement};
use crate::version::Version;

/// What happened to one migration during a run, for progress output.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Applied {
    /// Its version (none for repeatables).
    pub version: Option<String>,
    /// Its description.
    pub description: String,
    /// Its script.
    pub script: String,
    /// `SQL` or `UNDO_SQL`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Milliseconds it took.
    pub execution_time_ms: u64,
    /// Whether it ran inside a transaction.
    pub transactional: bool,
}

/// What `migrate` reports while it runs, in this order.
#[derive(Debug)]
pub enum Progress<'a> {
    /// Validation passed over this many resolved migrations.
    Validated {
        /// Versioned and repeatable scripts found.
        migrations: usize,
        /// Milliseconds it took.
        ms: u64,
    },
    /// The history table was created (with a baseline row when `baselined`).
    CreatedTable {
        /// Whether a baseline row was written.
        baselined: bool,
    },
    /// The schema version before anything is applied.
    Current {
        /// None on an empty schema.
        version: Option<String>,
    },
    /// A migration is about to run.
    Applying {
        /// The script.
        script: &'a Script,
        /// Whether it runs inside a transaction.
        transactional: bool,
    },
}

/// The result of a `migrate`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MigrateReport {
    /// The schema version before.
    pub initial_version: Option<String>,
    /// The schema version after.
    pub target_version: Option<String>,
    /// What ran, in order.
    pub applied: Vec<Applied>,
    /// Whether the history table was created by this run.
    pub created_table: bool,
    /// Whether a baseline row was written (baselineOnMigrate).
    pub baselined: bool,
    /// Milliseconds in all.
    pub total_ms: u64,
}

/// A migration's classification before anything runs.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Classified {
    /// Its version (none for repeatables).
    pub version: Option<String>,
    /// Its script.
    pub script: String,
    /// Whether it runs in a transaction.
    pub transactional: bool,
    /// Statements in it.
    pub statements: usize,
}

/// Where and how the runner connects.
#[derive(Debug, Clone)]
pub struct Connection {
    /// Host, port and database.
    pub url: PgUrl,
    /// The URL as shown in messages (password masked).
    pub shown_url: String,
    /// The login.
    pub user: String,
    /// Its password.
    pub password: Option<String>,
    /// Connection retries.
    pub retries: u32,
    /// The database to use when the migrated one must be left alone (template restore points).
    pub maintenance_db: String,
}

/// The database restore points connect to by default while they copy or swap databases.
pub const DEFAULT_MAINTENANCE_DB: &str = "postgres";

/// An open connection with everything a command needs.
pub struct Runner {
    config: Config,
    connection: Connection,
    client: Client,
    found: Found,
    placeholders: Placeholders,
    settings: Settings,
    /// The schema holding the history table.
    pub schema: String,
    /// Every schema this runner manages (the history's first).
    pub schemas: Vec<String>,
    /// The history table's name.
    pub table: String,
    /// The URL, password masked.
    pub url: String,
    /// The database name.
    pub database: String,
    /// The server's version string.
    pub server_version: String,
    installed_by: String,
    lock_key: i64,
}

impl std::fmt::Debug for Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner")
            .field("url", &self.url)
            .field("schema", &self.schema)
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

impl Runner {
    /// Scans the locations, connects and reads the database's context.
    pub fn open(config: &Config) -> Result<Runner, MigrateError> {
        if config.locations.is_empty() {
            return Err(MigrateError::NoLocations);
        }
        let mut found = resolve::scan(&config.locations, &Naming::from(config))?;
        for (script, reason) in &found.skipped {
            tracing::warn!(script = %script, reason = %reason, "skipping file with an invalid migration name");
        }
        let target = Target::parse(config.target.as_deref()).map_err(MigrateError::BadTarget)?;

        if !config.encoding.eq_ignore_ascii_case("UTF-8")
            && !config.encoding.eq_ignore_ascii_case("UTF8")
        {
            return Err(MigrateError::Unsupported(format!(
                "encoding {}: scripts are read as UTF-8; convert them (e.g. iconv -f {} -t UTF-8) and drop the setting",
                config.encoding, config.encoding
            )));
        }
        let connection = Connection::from_config(config)?;
        let (shown_url, user) = (connection.shown_url.clone(), connection.user.clone());
        let url = connection.url.clone();
        let mut client = connection.connect(None)?;
        let database = db::scalar(
            &mut client,
            "SELECT current_database()::text",
            "reading the database name",
        )?;
        let server_version = db::scalar(
            &mut client,
            "SHOW server_version",
            "reading the server version",
        )?;
        let current_schema = match &url.current_schema {
            Some(s) => s.clone(),
            None => db::scalar(
                &mut client,
                "SELECT coalesce(current_schema()::text, 'public')",
                "reading the current schema",
            )?,
        };
        let schemas = if config.schemas.is_empty() {
            vec![config.default_schema.clone().unwrap_or(current_schema)]
        } else {
            config.schemas.clone()
        };
        let schema = config
            .default_schema
            .clone()
            .unwrap_or_else(|| schemas[0].clone());
        let installed_by = match &config.installed_by {
            Some(by) => by.clone(),
            None => db::scalar(
                &mut client,
                "SELECT current_user::text",
                "reading the current user",
            )?,
        };
        let mut values: Vec<(String, String)> = config
            .placeholders
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        values.extend([
            ("flyway:defaultSchema".into(), schema.clone()),
            ("flyway:user".into(), user.clone()),
            ("flyway:database".into(), database.clone()),
            (
                "flyway:timestamp".into(),
                chrono::Local::now().format("%Y-%m-%d %H:%M:%S").to_string(),
            ),
            ("flyway:table".into(), config.table.clone()),
            ("flyway:environment".into(), "default".into()),
            (
                "flyway:workingDirectory".into(),
                std::env::current_dir()
                    .map(|d| d.display().to_string())
                    .unwrap_or_default(),
            ),
        ]);
        let placeholders = Placeholders::new(
            config.placeholder_replacement,
            &config.placeholder_prefix,
            &config.placeholder_suffix,
            values,
        );
        // Repeatables are checksummed after replacement; the raw checksum stays acceptable.
        for script in &mut found.repeatable {
            let replaced = replaced_text(&placeholders, script)?;
            let checksum = crate::checksum::of_text(&replaced);
            if checksum != script.checksum {
                script.equivalent_checksum = Some(script.checksum);
                script.checksum = checksum;
            }
        }
        Ok(Runner {
            lock_key: db::lock_key(&schema, &config.table),
            table: config.table.clone(),
            settings: Settings {
                target,
                out_of_order: config.out_of_order,
                ignore_patterns: config.ignore_migration_patterns.clone(),
            },
            config: config.clone(),
            connection,
            client,
            found,
            placeholders,
            schema,
            schemas,
            url: shown_url,
            database,
            server_version,
            installed_by,
        })
    }

    /// The scripts found on disk.
    pub fn found(&self) -> &Found {
        &self.found
    }

    /// The connection, for callers that need more (restore points).
    pub fn client(&mut self) -> &mut Client {
        &mut self.client
    }

    /// The history rows, or none when the table does not exist yet.
    pub fn rows(&mut self) -> Result<Vec<AppliedRow>, MigrateError> {
        if !db::table_exists(&mut self.client, &self.schema, &self.table)? {
            return Ok(Vec::new());
        }
        db::rows_after(&mut self.client, &self.schema, &self.table, -1)
    }

    /// Every migration's state.
    pub fn info(&mut self) -> Result<Info, MigrateError> {
        let rows = self.rows()?;
        Ok(plan::info(&self.found, &rows, &self.settings))
    }

    /// Validates applied against resolved migrations; the problems are the error.
    pub fn validate(&mut self) -> Result<usize, MigrateError> {
        let info = self.info()?;
        let problems = plan::validate(&self.found, &info, &self.settings, false);
        if problems.is_empty() {
            Ok(self.found.versioned.len() + self.found.repeatable.len())
        } else {
            Err(MigrateError::Validate(problems))
        }
    }

    /// Splits and classifies every pending migration, without running anything: what a deploy
    /// checks before it stops services.
    pub fn classify_pending(&mut self) -> Result<Vec<Classified>, MigrateError> {
        let info = self.info()?;
        if self.config.validate_on_migrate {
            let problems = plan::validate(&self.found, &info, &self.settings, true);
            if !problems.is_empty() {
                return Err(MigrateError::Validate(problems));
            }
        }
        let steps = plan::pending(&info).map_err(|version| MigrateError::FailedRow {
            table: db::table_name(&self.schema, &self.table),
            version,
        })?;
        steps
            .iter()
            .map(|step| {
                let script = self.script(*step);
                let (statements, transactional) = self.prepare(script)?;
                Ok(Classified {
                    version: script.version.as_ref().map(ToString::to_string),
                    script: script.script.clone(),
                    transactional,
                    statements: statements.len(),
                })
            })
            .collect()
    }

    fn script(&self, step: Step) -> &Script {
        script_of(&self.found, step)
    }

    fn prepare(&self, script: &Script) -> Result<(Vec<Statement>, bool), MigrateError> {
        prepare(&self.placeholders, self.config.mixed, script)
    }

    /// Puts the history's schema first on the search path (when it exists), as Flyway does,
    /// so unqualified names in scripts land there.
    fn use_schema(&mut self) -> Result<(), MigrateError> {
        if !db::schema_exists(&mut self.client, &self.schema)? {
            return Ok(());
        }
        let path = db::scalar(
            &mut self.client,
            "SELECT current_setting('search_path')",
            "reading the search path",
        )?;
        let quoted = db::quote_ident(&self.schema);
        if path == self.schema
            || path == quoted
            || path.starts_with(&format!("{quoted},"))
            || path.starts_with(&format!("{},", self.schema))
        {
            return Ok(());
        }
        let new_path = if path.trim().is_empty() {
            quoted
        } else {
            format!("{quoted}, {path}")
        };
        self.client
            .execute("SELECT set_config('search_path', $1, false)", &[&new_path])
            .map(drop)
            .map_err(db::failed("setting the search path"))
    }

    /// Creates missing schemas (recording the marker row) and the history table, baselining a
    /// non-empty schema when configured to. Returns (created, baselined).
    fn ensure_table(&mut self) -> Result<(bool, bool), MigrateError> {
        if db::table_exists(&mut self.client, &self.schema, &self.table)? {
            return Ok((false, false));
        }
        let mut tx = self
            .client
            .transaction()
            .map_err(db::failed("starting a transaction"))?;
        db::lock_in_transaction(&mut tx, self.lock_key, self.config.lock_retry_count)?;
        // Another runner may have created it while this one waited for the lock.
        if db::table_exists(&mut tx, &self.schema, &self.table)? {
            tx.commit().map_err(db::failed("committing"))?;
            return Ok((false, false));
        }
        let mut created_schemas = Vec::new();
        for schema in &self.schemas {
            if !db::schema_exists(&mut tx, schema)? {
                if !self.config.create_schemas {
                    return Err(MigrateError::Database {
                        action: format!("schema {schema} does not exist"),
                        message: "create it, or set createSchemas=true".into(),
                    });
                }
                tx.batch_execute(&format!("CREATE SCHEMA {}", db::quote_ident(schema)))
                    .map_err(db::failed("creating a schema"))?;
                created_schemas.push(schema.clone());
            }
        }
        let mut baselined = false;
        let mut rows = Vec::new();
        if !created_schemas.is_empty() {
            rows.push(marker_row(
                &self.installed_by,
                0,
                None,
                "<< Flyway Schema Creation >>",
                "SCHEMA",
                &created_schemas
                    .iter()
                    .map(|s| db::quote_ident(s))
                    .collect::<Vec<_>>()
                    .join(","),
            ));
        } else {
            for schema in self.schemas.clone() {
                if !db::schema_is_empty(&mut tx, &schema)? {
                    if !self.config.baseline_on_migrate {
                        return Err(MigrateError::NeedsBaseline {
                            schema,
                            table: self.table.clone(),
                        });
                    }
                    baselined = true;
                    break;
                }
            }
        }
        if baselined {
            let version = self.config.baseline_version.clone();
            let description = self.config.baseline_description.clone();
            rows.push(marker_row(
                &self.installed_by,
                1,
                Some(version),
                &description,
                "BASELINE",
                &description,
            ));
        }
        db::create_table(&mut tx, &self.schema, &self.table, &rows)?;
        tx.commit()
            .map_err(db::failed("creating the schema history table"))?;
        Ok((true, baselined))
    }
}

fn marker_row(
    installed_by: &str,
    rank: i32,
    version: Option<String>,
    description: &str,
    kind: &str,
    script: &str,
) -> AppliedRow {
    AppliedRow {
        installed_rank: rank,
        version,
        description: description.to_string(),
        kind: kind.to_string(),
        script: script.to_string(),
        checksum: None,
        installed_by: installed_by.to_string(),
        installed_on: String::new(),
        execution_time: 0,
        success: true,
    }
}

impl Runner {
    /// Runs the callbacks of an event (each in the current transaction or autocommit).
    fn callbacks(
        db: &mut impl GenericClient,
        found: &Found,
        placeholders: &Placeholders,
        event: Event,
    ) -> Result<(), MigrateError> {
        let chosen: Vec<&Callback> = found
            .callbacks
            .iter()
            .filter(|c| c.event == event)
            .collect();
        for callback in chosen {
            let text = placeholders
                .replace(&callback.text, file_name(&callback.script))
                .map_err(|name| MigrateError::UnknownPlaceholder {
                    script: callback.script.clone(),
                    name,
                })?;
            let statements = sql::split(&text).map_err(|source| MigrateError::Split {
                script: callback.script.clone(),
                source,
            })?;
            run_statements(db, &callback.script, &statements)?;
        }
        Ok(())
    }

    /// Applies every pending migration up to the target, one transaction each, telling
    /// `progress` what it does ([`Progress`]).
    pub fn migrate(
        &mut self,
        progress: &mut dyn FnMut(Progress<'_>),
    ) -> Result<MigrateReport, MigrateError> {
        let started = Instant::now();
        let initial = self.info()?;
        if self.config.validate_on_migrate {
            let problems = plan::validate(&self.found, &initial, &self.settings, true);
            if !problems.is_empty() {
                return Err(MigrateError::Validate(problems));
            }
            progress(Progress::Validated {
                migrations: self.found.versioned.len() + self.found.repeatable.len(),
                ms: started.elapsed().as_millis() as u64,
            });
        }
        // Every pending script is read, placeholder-replaced, split and classified before the
        // database is touched: a bad script changes nothing, not even the history table.
        if let Ok(steps) = plan::pending(&initial) {
            for step in steps {
                self.prepare(self.script(step))?;
            }
        }
        let (created_table, baselined) = self.ensure_table()?;
        if created_table {
            progress(Progress::CreatedTable { baselined });
        }
        self.use_schema()?;
        let mut rows = db::rows_after(&mut self.client, &self.schema, &self.table, -1)?;
        let initial_version = plan::info(&self.found, &rows, &self.settings)
            .current
            .map(|v| v.to_string());
        progress(Progress::Current {
            version: initial_version.clone(),
        });
        let mut applied: Vec<Applied> = Vec::new();
        let result = self.migrate_loop(&mut rows, &mut applied, progress);
        let found = &self.found;
        let placeholders = &self.placeholders;
        match result {
            Ok(()) => {
                Self::callbacks(&mut self.client, found, placeholders, Event::AfterMigrate)?;
                let target_version = plan::info(found, &rows, &self.settings)
                    .current
                    .map(|v| v.to_string());
                Ok(MigrateReport {
                    initial_version,
                    target_version,
                    applied,
                    created_table,
                    baselined,
                    total_ms: started.elapsed().as_millis() as u64,
                })
            }
            Err(e) => {
                // The error callbacks are best effort: the migration's own error is the one
                // to report.
                if let Err(cb) = Self::callbacks(
                    &mut self.client,
                    found,
                    placeholders,
                    Event::AfterMigrateError,
                ) {
                    tracing::warn!(error = %cb, "afterMigrateError callback failed");
                }
                Err(e)
            }
        }
    }

    fn migrate_loop(
        &mut self,
        rows: &mut Vec<AppliedRow>,
        applied: &mut Vec<Applied>,
        progress: &mut dyn FnMut(Progress<'_>),
    ) -> Result<(), MigrateError> {
        let done = |applied: &Vec<Applied>| -> Vec<String> {
            applied
                .iter()
                .map(|a| a.version.clone().unwrap_or_else(|| a.description.clone()))
                .collect()
        };
        Self::callbacks(
            &mut self.client,
            &self.found,
            &self.placeholders,
            Event::BeforeMigrate,
        )?;
        if self.config.group {
            return self.migrate_group(rows, applied, progress);
        }
        let mut queue: Option<std::collections::VecDeque<Step>> = None;
        // Bounded: each pass applies one migration or stops, and there are finitely many.
        for _ in 0..=self.found.versioned.len() + self.found.repeatable.len() {
            // One round trip: BEGIN, Flyway's lock, and the rows other runners added meanwhile.
            let last = rows.last().map_or(-1, |r| r.installed_rank);
            let newer = db::begin_locked(
                &mut self.client,
                &self.schema,
                &self.table,
                self.lock_key,
                self.config.lock_retry_count,
                last,
            )?;
            // The plan stays valid while only this runner adds rows; another runner's rows
            // (or a skipped step) make it plan again.
            if !newer.is_empty() {
                queue = None;
            }
            rows.extend(newer);
            if queue.is_none() {
                let info = plan::info(&self.found, rows, &self.settings);
                match plan::pending(&info) {
                    Ok(steps) => queue = Some(steps.into()),
                    Err(version) => {
                        db::rollback(&mut self.client)?;
                        return Err(MigrateError::FailedRow {
                            table: db::table_name(&self.schema, &self.table),
                            version,
                        });
                    }
                }
            }
            let Some(step) = queue
                .as_mut()
                .and_then(std::collections::VecDeque::pop_front)
            else {
                db::commit(&mut self.client)?;
                return Ok(());
            };
            let script = script_of(&self.found, step).clone();
            let (statements, transactional) =
                match prepare(&self.placeholders, self.config.mixed, &script) {
                    Ok(prepared) => prepared,
                    Err(e) => {
                        db::rollback(&mut self.client)?;
                        return Err(e);
                    }
                };
            progress(Progress::Applying {
                script: &script,
                transactional,
            });
            let rank = rows.last().map_or(1, |r| r.installed_rank + 1).max(1);
            let started = Instant::now();
            let mut row = script_row(&script, rank, &self.installed_by);
            if transactional {
                let outcome = run_migration(
                    &mut self.client,
                    &self.found,
                    &self.placeholders,
                    &script,
                    &statements,
                );
                if let Err(e) = outcome {
                    db::rollback(&mut self.client)?; // no row, no change
                    self.after_each_error();
                    return Err(with_applied(e, done(applied), false));
                }
                row.execution_time = elapsed_ms(started);
                // The row and the commit in one round trip: both or neither.
                db::insert_and_commit(&mut self.client, &self.schema, &self.table, &row)?;
            } else {
                // Outside a transaction the xact lock cannot be held: switch to the session
                // lock (the same key, so Flyway still waits), and re-check nobody applied it.
                db::commit(&mut self.client)?;
                db::lock_session(
                    &mut self.client,
                    self.lock_key,
                    self.config.lock_retry_count,
                )?;
                let outcome =
                    self.apply_outside_transaction(rows, &script, &statements, &mut row, started);
                db::unlock_session(&mut self.client, self.lock_key)?;
                match outcome {
                    Ok(true) => {}
                    Ok(false) => {
                        queue = None; // applied by someone else meanwhile: plan again
                        continue;
                    }
                    Err(e) => {
                        self.after_each_error();
                        return Err(with_applied(e, done(applied), true));
                    }
                }
            }
            applied.push(applied_of(&row, transactional));
            rows.push(row);
        }
        Ok(())
    }

    /// `group=true`: every pending migration in one transaction, so all apply or none does.
    fn migrate_group(
        &mut self,
        rows: &mut Vec<AppliedRow>,
        applied: &mut Vec<Applied>,
        progress: &mut dyn FnMut(Progress<'_>),
    ) -> Result<(), MigrateError> {
        let mut tx = self
            .client
            .transaction()
            .map_err(db::failed("starting a transaction"))?;
        db::lock_in_transaction(&mut tx, self.lock_key, self.config.lock_retry_count)?;
        let last = rows.last().map_or(-1, |r| r.installed_rank);
        rows.extend(db::rows_after(&mut tx, &self.schema, &self.table, last)?);
        let info = plan::info(&self.found, rows, &self.settings);
        let steps = plan::pending(&info).map_err(|version| MigrateError::FailedRow {
            table: db::table_name(&self.schema, &self.table),
            version,
        })?;
        let mut new_rows = Vec::new();
        for step in steps {
            let script = script_of(&self.found, step).clone();
            let (statements, transactional) =
                prepare(&self.placeholders, self.config.mixed, &script)?;
            if !transactional {
                return Err(MigrateError::Mixed {
                    script: script.script.clone(),
                    line: statements
                        .iter()
                        .find(|s| !s.transactional)
                        .map_or(1, |s| s.line),
                    statement: "group=true puts every migration in one transaction".into(),
                });
            }
            progress(Progress::Applying {
                script: &script,
                transactional: true,
            });
            let started = Instant::now();
            let outcome = run_migration(
                &mut tx,
                &self.found,
                &self.placeholders,
                &script,
                &statements,
            );
            if let Err(e) = outcome {
                drop(tx); // rolls back the whole group
                self.after_each_error();
                return Err(with_applied(e, Vec::new(), false));
            }
            let rank = rows
                .last()
                .into_iter()
                .chain(new_rows.last())
                .map(|r: &AppliedRow| r.installed_rank + 1)
                .max()
                .unwrap_or(1)
                .max(1);
            let row = AppliedRow {
                execution_time: elapsed_ms(started),
                ..script_row(&script, rank, &self.installed_by)
            };
            db::insert(&mut tx, &self.schema, &self.table, &row)?;
            new_rows.push(row);
        }
        tx.commit().map_err(db::failed("committing the group"))?;
        for row in new_rows {
            applied.push(applied_of(&row, true));
            rows.push(row);
        }
        Ok(())
    }

    /// Applies a non-transactional script under the session lock. A failure still writes a
    /// row with success = false (what ran cannot be rolled back), as Flyway does.
    fn apply_outside_transaction(
        &mut self,
        rows: &mut Vec<AppliedRow>,
        script: &Script,
        statements: &[Statement],
        row: &mut AppliedRow,
        started: Instant,
    ) -> Result<bool, MigrateError> {
        let last = rows.last().map_or(-1, |r| r.installed_rank);
        let newer = db::rows_after(&mut self.client, &self.schema, &self.table, last)?;
        let again = !newer.is_empty();
        rows.extend(newer);
        if again {
            let info = plan::info(&self.found, rows, &self.settings);
            let still = plan::pending(&info).unwrap_or_default();
            if still.first().map(|s| self.script(*s).script.as_str())
                != Some(script.script.as_str())
            {
                return Ok(false);
            }
            row.installed_rank = rows.last().map_or(1, |r| r.installed_rank + 1).max(1);
        }
        Self::callbacks(
            &mut self.client,
            &self.found,
            &self.placeholders,
            Event::BeforeEachMigrate,
        )?;
        let outcome = run_statements(&mut self.client, &script.script, statements);
        row.execution_time = elapsed_ms(started);
        row.success = outcome.is_ok();
        db::insert(&mut self.client, &self.schema, &self.table, row)?;
        outcome?;
        Self::callbacks(
            &mut self.client,
            &self.found,
            &self.placeholders,
            Event::AfterEachMigrate,
        )?;
        Ok(true)
    }

    fn after_each_error(&mut self) {
        if let Err(e) = Self::callbacks(
            &mut self.client,
            &self.found,
            &self.placeholders,
            Event::AfterEachMigrateError,
        ) {
            tracing::warn!(error = %e, "afterEachMigrateError callback failed");
        }
    }

    /// Writes the baseline row into a new history table.
    pub fn baseline(&mut self) -> Result<String, MigrateError> {
        let version = Version::parse(&self.config.baseline_version)
            .map_err(|e| MigrateError::Baseline(e.to_string()))?;
        if db::table_exists(&mut self.client, &self.schema, &self.table)? {
            let rows = db::rows_after(&mut self.client, &self.schema, &self.table, -1)?;
            return match rows.iter().find(|r| r.kind == "BASELINE") {
                Some(b)
                    if b.version.as_deref().and_then(|v| Version::parse(v).ok())
                        == Some(version.clone()) =>
                {
                    Ok(format!(
                        "schema history table {} already baselined at version {}",
                        db::table_name(&self.schema, &self.table),
                        version
                    ))
                }
                Some(b) => Err(MigrateError::Baseline(format!(
                    "already baselined at version {}, not {version}",
                    b.version.clone().unwrap_or_default()
                ))),
                None if rows.iter().any(|r| r.kind != "SCHEMA") => {
                    Err(MigrateError::Baseline(format!(
                        "schema history table {} already holds migrations: baseline only a database Flyway has never migrated",
                        db::table_name(&self.schema, &self.table)
                    )))
                }
                None => {
                    let mut tx = self
                        .client
                        .transaction()
                        .map_err(db::failed("starting a transaction"))?;
                    db::lock_in_transaction(&mut tx, self.lock_key, self.config.lock_retry_count)?;
                    let rank = rows.last().map_or(1, |r| r.installed_rank + 1).max(1);
                    let description = self.config.baseline_description.clone();
                    let row = marker_row(
                        &self.installed_by,
                        rank,
                        Some(self.config.baseline_version.clone()),
                        &description,
                        "BASELINE",
                        &description,
                    );
                    db::insert(&mut tx, &self.schema, &self.table, &row)?;
                    tx.commit().map_err(db::failed("committing the baseline"))?;
                    Ok(format!(
                        "successfully baselined schema with version: {version}"
                    ))
                }
            };
        }
        let description = self.config.baseline_description.clone();
        let row = marker_row(
            &self.installed_by,
            1,
            Some(self.config.baseline_version.clone()),
            &description,
            "BASELINE",
            &description,
        );
        let mut tx = self
            .client
            .transaction()
            .map_err(db::failed("starting a transaction"))?;
        db::lock_in_transaction(&mut tx, self.lock_key, self.config.lock_retry_count)?;
        for schema in self.schemas.clone() {
            if !db::schema_exists(&mut tx, &schema)? {
                tx.batch_execute(&format!("CREATE SCHEMA {}", db::quote_ident(&schema)))
                    .map_err(db::failed("creating a schema"))?;
            }
        }
        db::create_table(&mut tx, &self.schema, &self.table, &[row])?;
        tx.commit().map_err(db::failed("committing the baseline"))?;
        Ok(format!(
            "successfully baselined schema with version: {version}"
        ))
    }

    /// Removes failed rows, realigns checksums and descriptions with the scripts, and marks
    /// missing migrations deleted. Returns what it did, one line each.
    pub fn repair(&mut self) -> Result<Vec<String>, MigrateError> {
        if !db::table_exists(&mut self.client, &self.schema, &self.table)? {
            return Ok(vec!["no schema history table: nothing to repair".into()]);
        }
        let table = db::table_name(&self.schema, &self.table);
        let mut done = Vec::new();
        let mut tx = self
            .client
            .transaction()
            .map_err(db::failed("starting a transaction"))?;
        db::lock_in_transaction(&mut tx, self.lock_key, self.config.lock_retry_count)?;
        let removed = tx
            .execute(
                &format!("DELETE FROM {table} WHERE \"success\" = FALSE"),
                &[],
            )
            .map_err(db::failed("removing failed rows"))?;
        if removed > 0 {
            done.push(format!("removed {removed} failed migration row(s)"));
        }
        let rows = db::rows_after(&mut tx, &self.schema, &self.table, -1)?;
        let info = plan::info(&self.found, &rows, &self.settings);
        let mut next_rank = rows.last().map_or(1, |r| r.installed_rank + 1).max(1);
        for entry in &info.entries {
            let Some(row) = &entry.applied else { continue };
            match (entry.state, entry.resolved, entry.category) {
                (plan::State::Missing, _, _) => {
                    let mut marker = row.clone();
                    marker.installed_rank = next_rank;
                    marker.kind = "DELETE".into();
                    marker.installed_by = self.installed_by.clone();
                    marker.execution_time = 0;
                    db::insert(&mut tx, &self.schema, &self.table, &marker)?;
                    next_rank += 1;
                    done.push(format!(
                        "marked missing migration {} as deleted",
                        entry
                            .version
                            .clone()
                            .unwrap_or_else(|| entry.description.clone())
                    ));
                }
                (
                    plan::State::Success | plan::State::OutOfOrder | plan::State::Outdated,
                    Some(r),
                    plan::Category::Versioned | plan::Category::Repeatable,
                ) => {
                    let script = if entry.category == plan::Category::Versioned {
                        &self.found.versioned[r]
                    } else {
                        &self.found.repeatable[r]
                    };
                    // A repeatable whose text changed is Outdated (it will run again), but one
                    // whose row only carries the raw-text checksum is realigned.
                    let realign_checksum = match entry.category {
                        plan::Category::Versioned => row.checksum != Some(script.checksum),
                        _ => {
                            script.equivalent_checksum.is_some()
                                && row.checksum == script.equivalent_checksum
                        }
                    };
                    if realign_checksum
                        || row.description != script.description
                        || row.kind != "SQL"
                    {
                        tx.execute(
                            &format!("UPDATE {table} SET \"checksum\" = $1, \"description\" = $2, \"type\" = 'SQL' WHERE \"installed_rank\" = $3"),
                            &[&Some(script.checksum), &script.description, &row.installed_rank],
                        )
                        .map_err(db::failed("realigning a schema history row"))?;
                        done.push(format!(
                            "realigned {} (checksum {} -> {}, description '{}')",
                            entry
                                .version
                                .clone()
                                .unwrap_or_else(|| entry.description.clone()),
                            row.checksum.map_or("none".into(), |c| c.to_string()),
                            script.checksum,
                            script.description
                        ));
                    }
                }
                _ => {}
            }
        }
        tx.commit().map_err(db::failed("committing the repair"))?;
        if done.is_empty() {
            done.push("schema history table is already in line with the scripts".into());
        }
        Ok(done)
    }

    /// Runs undo scripts, newest version first, down to `target` (which stays applied; none =
    /// only the newest), writing an `UNDO_SQL` row for each in its transaction.
    pub fn undo(
        &mut self,
        target: Option<&Version>,
        progress: &mut dyn FnMut(&Script),
    ) -> Result<Vec<Applied>, MigrateError> {
        let mut undone = Vec::new();
        let mut tx = self
            .client
            .transaction()
            .map_err(db::failed("starting a transaction"))?;
        db::lock_in_transaction(&mut tx, self.lock_key, self.config.lock_retry_count)?;
        let mut rows = db::rows_after(&mut tx, &self.schema, &self.table, -1)?;
        let info = plan::info(&self.found, &rows, &self.settings);
        let scripts = plan::undo(&self.found, &info, target).map_err(MigrateError::Undo)?;
        tx.commit().map_err(db::failed("committing"))?;
        for index in scripts {
            let script = self.found.undo[index].clone();
            let (statements, transactional) = self.prepare(&script)?;
            progress(&script);
            let started = Instant::now();
            let mut tx = self
                .client
                .transaction()
                .map_err(db::failed("starting a transaction"))?;
            db::lock_in_transaction(&mut tx, self.lock_key, self.config.lock_retry_count)?;
            let last = rows.last().map_or(-1, |r| r.installed_rank);
            rows.extend(db::rows_after(&mut tx, &self.schema, &self.table, last)?);
            let done: Vec<String> = undone
                .iter()
                .map(|a: &Applied| a.version.clone().unwrap_or_default())
                .collect();
            let rank = rows.last().map_or(1, |r| r.installed_rank + 1).max(1);
            let mut row = script_row(&script, rank, &self.installed_by);
            if transactional {
                if let Err(e) = run_statements(&mut tx, &script.script, &statements) {
                    return Err(with_applied(e, done, false));
                }
                row.execution_time = elapsed_ms(started);
                db::insert(&mut tx, &self.schema, &self.table, &row)?;
                tx.commit().map_err(db::failed("committing the undo"))?;
            } else {
                tx.commit().map_err(db::failed("committing"))?;
                db::lock_session(
                    &mut self.client,
                    self.lock_key,
                    self.config.lock_retry_count,
                )?;
                let outcome = run_statements(&mut self.client, &script.script, &statements);
                row.execution_time = elapsed_ms(started);
                row.success = outcome.is_ok();
                let written = db::insert(&mut self.client, &self.schema, &self.table, &row);
                db::unlock_session(&mut self.client, self.lock_key)?;
                written?;
                outcome.map_err(|e| with_applied(e, done, true))?;
            }
            undone.push(applied_of(&row, transactional));
            rows.push(row);
        }
        Ok(undone)
    }

    /// Drops every object in the managed schemas (refused unless `cleanDisabled=false`).
    pub fn clean(&mut self) -> Result<Vec<String>, MigrateError> {
        if self.config.clean_disabled {
            return Err(MigrateError::CleanDisabled);
        }
        let mut tx = self
            .client
            .transaction()
            .map_err(db::failed("starting a transaction"))?;
        let mut done = Vec::new();
        for schema in self.schemas.clone() {
            if db::schema_exists(&mut tx, &schema)? {
                let q = db::quote_ident(&schema);
                tx.batch_execute(&format!("DROP SCHEMA {q} CASCADE; CREATE SCHEMA {q};"))
                    .map_err(db::failed("cleaning a schema"))?;
                done.push(format!("successfully cleaned schema {q}"));
            }
        }
        tx.commit().map_err(db::failed("committing the clean"))?;
        Ok(done)
    }

    /// How this runner connects.
    pub fn connection(&self) -> &Connection {
        &self.connection
    }

    /// Uses another maintenance database for [`Runner::park`] (default `postgres`).
    pub fn set_maintenance_db(&mut self, name: &str) {
        self.connection.maintenance_db = name.to_string();
    }

    /// Moves this runner's session to the maintenance database, leaving the migrated one
    /// free to be copied or renamed; [`Runner::unpark`] comes back.
    pub fn park(&mut self) -> Result<(), MigrateError> {
        let maintenance = self.connection.maintenance_db.clone();
        self.client = self.connection.connect(Some(&maintenance))?;
        Ok(())
    }

    /// Reconnects to the migrated database.
    pub fn unpark(&mut self) -> Result<(), MigrateError> {
        self.client = self.connection.connect(None)?;
        Ok(())
    }

    /// A second session on the maintenance database.
    pub fn maintenance_client(&self) -> Result<Client, MigrateError> {
        self.connection
            .connect(Some(&self.connection.maintenance_db.clone()))
    }

    /// Deletes failed rows of versions above `version` (what an undo restore leaves behind
    /// when a non-transactional migration failed half-way).
    pub fn remove_failed_rows_above(&mut self, version: &Version) -> Result<usize, MigrateError> {
        if !db::table_exists(&mut self.client, &self.schema, &self.table)? {
            return Ok(0);
        }
        let rows = db::rows_after(&mut self.client, &self.schema, &self.table, -1)?;
        let table = db::table_name(&self.schema, &self.table);
        let mut removed = 0;
        for row in rows.iter().filter(|r| !r.success) {
            let above = row
                .version
                .as_deref()
                .and_then(|v| Version::parse(v).ok())
                .is_some_and(|v| v > *version);
            if above {
                self.client
                    .execute(
                        &format!("DELETE FROM {table} WHERE \"installed_rank\" = $1"),
                        &[&row.installed_rank],
                    )
                    .map_err(db::failed("removing a failed row"))?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// The configuration this runner was opened with.
    pub fn config(&self) -> &Config {
        &self.config
    }
}

impl Connection {
    /// The connection a configuration describes (URL, login; user defaults to `postgres`).
    pub fn from_config(config: &Config) -> Result<Connection, MigrateError> {
        let raw_url = config.url.as_deref().ok_or(MigrateError::NoUrl)?;
        let url = parse_jdbc_url(raw_url)?;
        let user = config
            .user
            .clone()
            .or_else(|| url.user.clone())
            .unwrap_or_else(|| "postgres".to_string());
        let password = config.password.clone().or_else(|| url.password.clone());
        Ok(Connection {
            url,
            shown_url: redact_url(raw_url),
            user,
            password,
            retries: config.connect_retries,
            maintenance_db: DEFAULT_MAINTENANCE_DB.to_string(),
        })
    }

    /// Opens a session on the configured database, or on `database` instead.
    pub fn connect(&self, database: Option<&str>) -> Result<Client, MigrateError> {
        let mut url = self.url.clone();
        if let Some(db) = database {
            url.database = Some(db.to_string());
        }
        db::connect(
            &url,
            &self.shown_url,
            &self.user,
            self.password.as_deref(),
            self.retries,
        )
    }
}

/// The schema version recorded in a database's history (none without a history or a
/// successful versioned row): what a state capture records. Needs no migration scripts.
pub fn schema_version(config: &Config) -> Result<Option<String>, MigrateError> {
    let connection = Connection::from_config(config)?;
    let mut client = connection.connect(None)?;
    let schema = match config
        .default_schema
        .clone()
        .or_else(|| config.schemas.first().cloned())
    {
        Some(s) => s,
        None => match connection.url.current_schema.clone() {
            Some(s) => s,
            None => db::scalar(
                &mut client,
                "SELECT coalesce(current_schema()::text, 'public')",
                "reading the current schema",
            )?,
        },
    };
    if !db::table_exists(&mut client, &schema, &config.table)? {
        return Ok(None);
    }
    let rows = db::rows_after(&mut client, &schema, &config.table, -1)?;
    Ok(plan::info(&Found::default(), &rows, &Settings::default())
        .current
        .map(|v| v.to_string()))
}

fn script_of(found: &Found, step: Step) -> &Script {
    match step.kind {
        Kind::Versioned => &found.versioned[step.index],
        Kind::Undo => &found.undo[step.index],
        Kind::Repeatable => &found.repeatable[step.index],
    }
}

/// A script's statements after placeholder replacement, and whether it runs in a
/// transaction (refusing a mix unless `mixed`).
fn prepare(
    placeholders: &Placeholders,
    mixed: bool,
    script: &Script,
) -> Result<(Vec<Statement>, bool), MigrateError> {
    let text = replaced_text(placeholders, script)?;
    let statements = sql::split(&text).map_err(|source| MigrateError::Split {
        script: script.script.clone(),
        source,
    })?;
    let first_non_tx = statements.iter().find(|s| !s.transactional);
    let transactional = match (script.execute_in_transaction, first_non_tx) {
        (Some(explicit), _) => explicit,
        (None, None) => true,
        (None, Some(_)) if statements.iter().all(|s| !s.transactional) => false,
        (None, Some(_)) if mixed => false,
        (None, Some(stmt)) => {
            return Err(MigrateError::Mixed {
                script: script.script.clone(),
                line: stmt.line,
                statement: stmt.sql.chars().take(60).collect(),
            });
        }
    };
    Ok((statements, transactional))
}

/// The history row a script writes (success, no time yet).
fn script_row(script: &Script, installed_rank: i32, installed_by: &str) -> AppliedRow {
    AppliedRow {
        installed_rank,
        version: script.version.as_ref().map(ToString::to_string),
        description: script.description.clone(),
        kind: script.kind.history_type().to_string(),
        script: script.script.clone(),
        checksum: Some(script.checksum),
        installed_by: installed_by.to_string(),
        installed_on: String::new(),
        execution_time: 0,
        success: true,
    }
}

/// What a run reports about a row it wrote.
fn applied_of(row: &AppliedRow, transactional: bool) -> Applied {
    Applied {
        version: row.version.clone(),
        description: row.description.clone(),
        script: row.script.clone(),
        kind: row.kind.clone(),
        execution_time_ms: u64::try_from(row.execution_time).unwrap_or(0),
        transactional,
    }
}

/// Milliseconds since `started`, as the history's INTEGER column holds them.
fn elapsed_ms(started: Instant) -> i32 {
    i32::try_from(started.elapsed().as_millis()).unwrap_or(i32::MAX)
}

fn file_name(script: &str) -> &str {
    script.rsplit('/').next().unwrap_or(script)
}

fn replaced_text(placeholders: &Placeholders, script: &Script) -> Result<String, MigrateError> {
    if script.placeholder_replacement == Some(false) {
        return Ok(script.text.clone());
    }
    placeholders
        .replace(&script.text, file_name(&script.script))
        .map_err(|name| MigrateError::UnknownPlaceholder {
            script: script.script.clone(),
            name,
        })
}

/// A migration inside its transaction: beforeEachMigrate callbacks, its statements,
/// afterEachMigrate callbacks.
fn run_migration(
    db: &mut impl GenericClient,
    found: &Found,
    placeholders: &Placeholders,
    script: &Script,
    statements: &[Statement],
) -> Result<(), MigrateError> {
    Runner::callbacks(db, found, placeholders, Event::BeforeEachMigrate)?;
    run_statements(db, &script.script, statements)?;
    Runner::callbacks(db, found, placeholders, Event::AfterEachMigrate)
}

/// Runs a script's statements one by one; a failure names the script and the line.
fn run_statements(
    db: &mut impl GenericClient,
    script: &str,
    statements: &[Statement],
) -> Result<(), MigrateError> {
    for statement in statements {
        db.batch_execute(&statement.sql)
            .map_err(|e| MigrateError::Apply {
                script: script.to_string(),
                line: statement.line,
                message: crate::error::db_message(&e),
                applied: Vec::new(),
                failed_row: false,
            })?;
    }
    Ok(())
}

fn with_applied(e: MigrateError, done: Vec<String>, wrote_failed_row: bool) -> MigrateError {
    match e {
        MigrateError::Apply {
            script,
            line,
            message,
            ..
        } => MigrateError::Apply {
            script,
            line,
            message,
            applied: done,
            failed_row: wrote_failed_row,
        },
        other => other,
    }
}
