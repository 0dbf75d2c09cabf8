//! `rampart migrate`: Flyway's commands on Flyway's configuration, against the same history.
//!
//! Input: Flyway-style arguments (`info`, `-url=jdbc:postgresql://...`, `-locations=filesystem:dir`,
//! also `--url ...`), `flyway.conf` / `flyway.toml` files and `FLYWAY_*` variables (command
//! line > environment > files). Output: text shaped like Flyway's, or one JSON object with
//! `--json` (or Flyway's `-outputType=json`). Exit 0 on success, 1 when the command failed,
//! 2 when the arguments or configuration are wrong (nothing was done).

use crate::exit::Exit;
use std::path::PathBuf;
use std::time::Instant;

use rampart_migrate::MigrateError;
use rampart_migrate::config::{self, Config, Sources};
use rampart_migrate::plan::{Entry, Info};
use rampart_migrate::run::{Progress, Runner};
use rampart_migrate::version::Version;
use serde_json::{Value, json};

/// The help text: what each command does and the flags Flyway users already know.
pub const HELP: &str = "\
Flyway-compatible PostgreSQL migrations: same file names, checksums, history table and lock,
so Rampart and Flyway can take turns on one database.

Usage: rampart migrate <COMMAND> [-key=value]... [--json]

Commands:
  info       list every migration with its state (Pending, Success, Failed, Outdated, ...)
  validate   check applied migrations against the scripts (checksums, descriptions, missing,
             failed, pending); exits 1 naming each problem
  migrate    validate, then apply pending migrations, one transaction each (history row
             included), under Flyway's advisory lock
  baseline   start the history of an existing database at -baselineVersion (default 1)
  repair     remove failed rows, realign checksums and descriptions, mark missing as deleted
  undo       run U<version>__*.sql scripts, newest first (one, or down to -target)
  clean      drop every object in the schemas (refused unless -cleanDisabled=false)

Settings (flyway.conf key without 'flyway.', also --key=value or --key value):
  -url=jdbc:postgresql://HOST:PORT/DB   -user=NAME   -password=SECRET
  -locations=filesystem:DIR[,filesystem:DIR2]      -schemas=a,b   -table=NAME
  -target=latest|current|next|VERSION   -outOfOrder=true   -baselineOnMigrate=true
  -baselineVersion=1   -validateOnMigrate=false   -placeholders.NAME=VALUE
  -mixed=true   -group=true   -installedBy=NAME   -ignoreMigrationPatterns='*:missing'
  -configFiles=a.conf,b.toml   -environment=NAME (flyway.toml [environments.NAME])

Configuration is read from ~/flyway.conf, ./flyway.conf, ~/flyway.toml, ./flyway.toml,
./flyway.user.toml, then -configFiles, then FLYWAY_* variables (FLYWAY_URL,
FLYWAY_PLACEHOLDERS_NAME, ...), then the command line; later wins.

Output: Flyway-like text; --json (or -outputType=json) prints one JSON object.
Exit codes: 0 done, 1 the command failed (nothing half-applied: each migration commits with
its history row or not at all), 2 bad arguments or configuration.

Examples:
  rampart migrate info -url=jdbc:postgresql://127.0.0.1:5432/app -user=app -locations=filesystem:sql
  rampart migrate migrate -configFiles=deploy/flyway.conf -placeholders.owner=app --json
  FLYWAY_PASSWORD=... rampart migrate validate -url=jdbc:postgresql://db:5432/app -user=app
";

/// The command and its output format, from the arguments.
#[derive(Debug)]
struct Invocation {
    command: String,
    json: bool,
    config: Config,
}

fn parse(args: &[String]) -> Result<Option<Invocation>, String> {
    let mut json = false;
    let mut rest = Vec::new();
    for arg in args {
        match arg.as_str() {
            "-h" | "--help" | "help" | "-?" => return Ok(None),
            "--json" | "-outputType=json" | "--outputType=json" => json = true,
            "-outputType=text" | "--outputType=text" => json = false,
            _ => rest.push(arg.clone()),
        }
    }
    let cli = config::parse_cli_args(&rest).map_err(|e| e.to_string())?;
    let command =
        match cli.positional.as_slice() {
            [one] => one.clone(),
            [] => return Err(
                "no command: give one of info, validate, migrate, baseline, repair, undo, clean"
                    .into(),
            ),
            more => return Err(format!("one command at a time, got: {}", more.join(" "))),
        };
    if ![
        "info", "validate", "migrate", "baseline", "repair", "undo", "clean",
    ]
    .contains(&command.as_str())
    {
        return Err(format!(
            "unknown command '{command}': use info, validate, migrate, baseline, repair, undo or clean"
        ));
    }
    let working_dir =
        std::env::current_dir().map_err(|e| format!("reading the working directory: {e}"))?;
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let mut files = config::default_files(home.as_deref(), &working_dir);
    files.extend(cli.config_files.iter().map(|f| working_dir.join(f)));
    let sources = Sources {
        files,
        env: std::env::vars()
            .filter(|(k, _)| k.starts_with("FLYWAY_") || k == "flyway_environment")
            .collect(),
        cli: cli.settings,
        environment: cli.environment,
        working_dir,
    };
    let config = config::load(&sources).map_err(|e| e.to_string())?;
    Ok(Some(Invocation {
        command,
        json,
        config,
    }))
}

/// Runs `rampart migrate ARGS...`; returns the exit code.
pub fn main(args: &[String]) -> Exit {
    let invocation = match parse(args) {
        Ok(Some(inv)) => inv,
        Ok(None) => {
            print!("{HELP}");
            return Exit::Ok;
        }
        Err(e) => {
            eprintln!("rampart migrate: {e}\n(see `rampart migrate --help`)");
            return Exit::Usage;
        }
    };
    let json = invocation.json;
    match execute(&invocation) {
        Ok(out) => {
            if json {
                println!("{out}");
            }
            Exit::Ok
        }
        Err(e) => {
            if json {
                println!(
                    "{}",
                    json!({"error": {"message": e.to_string(), "kind": kind_of(&e)}})
                );
            } else {
                eprintln!("ERROR: {e}");
            }
            match e {
                MigrateError::Config(_)
                | MigrateError::NoLocations
                | MigrateError::NoUrl
                | MigrateError::BadTarget(_) => Exit::Usage,
                _ => Exit::Failed,
            }
        }
    }
}

fn kind_of(e: &MigrateError) -> &'static str {
    match e {
        MigrateError::Config(_)
        | MigrateError::NoLocations
        | MigrateError::NoUrl
        | MigrateError::BadTarget(_) => "configuration",
        MigrateError::Connect { .. } => "connection",
        MigrateError::Validate(_) => "validation",
        MigrateError::Apply { .. } => "migration",
        MigrateError::Lock { .. } => "lock",
        _ => "error",
    }
}

fn say(json: bool, line: impl AsRef<str>) {
    if !json {
        println!("{}", line.as_ref());
    }
}

fn elapsed(started: Instant) -> String {
    clock(started.elapsed().as_millis() as u64)
}

/// Milliseconds as Flyway prints durations (`00:00.054s`).
fn clock(ms: u64) -> String {
    format!(
        "{:02}:{:02}.{:03}s",
        ms / 60_000,
        (ms / 1000) % 60,
        ms % 1000
    )
}

fn execute(inv: &Invocation) -> Result<Value, MigrateError> {
    let json = inv.json;
    let mut runner = Runner::open(&inv.config)?;
    let table = format!("\"{}\".\"{}\"", runner.schema, runner.table);
    say(
        json,
        format!(
            "Database: {} (PostgreSQL {})",
            runner.url, runner.server_version
        ),
    );
    for (script, reason) in &runner.found().skipped {
        say(
            json,
            format!("WARNING: skipping {script}: not a valid migration name ({reason})"),
        );
    }
    let started = Instant::now();
    match inv.command.as_str() {
        "info" => {
            let info = runner.info()?;
            say(json, format!("Schema version: {}", version_or_empty(&info)));
            say(json, "");
            say(json, info_table(&info));
            Ok(json!({
                "schemaName": runner.schema,
                "schemaVersion": info.current.as_ref().map(ToString::to_string),
                "migrations": info.entries.iter().map(entry_json).collect::<Vec<_>>(),
                "database": runner.database,
            }))
        }
        "validate" => {
            let count = runner.validate()?;
            say(
                json,
                format!(
                    "Successfully validated {count} migrations (execution time {})",
                    elapsed(started)
                ),
            );
            Ok(json!({"validationSuccessful": true, "validateCount": count}))
        }
        "migrate" => {
            let schema = runner.schema.clone();
            let report = runner.migrate(&mut |progress| match progress {
                Progress::Validated { migrations, ms } => say(
                    json,
                    format!(
                        "Successfully validated {migrations} migrations (execution time {})",
                        clock(ms)
                    ),
                ),
                Progress::CreatedTable { baselined } => {
                    say(json, format!("Creating Schema History table {table} ..."));
                    if baselined {
                        say(json, format!("Successfully baselined schema with version: {}", inv.config.baseline_version));
                    }
                }
                Progress::Current { version } => say(
                    json,
                    format!(
                        "Current version of schema \"{schema}\": {}",
                        version.as_deref().unwrap_or("<< Empty Schema >>")
                    ),
                ),
                Progress::Applying {
                    script,
                    transactional,
                } => {
                    let how = if transactional { "" } else { " [non-transactional]" };
                    match &script.version {
                        Some(v) => say(json, format!("Migrating schema \"{schema}\" to version \"{v} - {}\"{how}", script.description)),
                        None => say(json, format!("Migrating schema \"{schema}\" with repeatable migration \"{}\"{how}", script.description)),
                    }
                }
            })?;
            if report.applied.is_empty() {
                say(
                    json,
                    format!(
                        "Schema \"{}\" is up to date. No migration necessary.",
                        runner.schema
                    ),
                );
            } else {
                say(
                    json,
                    format!(
                        "Successfully applied {} migration{} to schema \"{}\", now at version v{} (execution time {})",
                        report.applied.len(),
                        if report.applied.len() == 1 { "" } else { "s" },
                        runner.schema,
                        report
                            .target_version
                            .as_deref()
                            .unwrap_or("<< Empty Schema >>"),
                        elapsed(started)
                    ),
                );
            }
            Ok(json!({
                "initialSchemaVersion": report.initial_version,
                "targetSchemaVersion": report.target_version,
                "schemaName": runner.schema,
                "migrationsExecuted": report.applied.len(),
                "migrations": report.applied,
                "success": true,
                "totalMigrationTime": report.total_ms,
            }))
        }
        "baseline" => {
            let message = runner.baseline()?;
            say(json, &message);
            Ok(
                json!({"successfullyBaselined": true, "baselineVersion": inv.config.baseline_version, "message": message}),
            )
        }
        "repair" => {
            let done = runner.repair()?;
            for line in &done {
                say(json, format!("Repair: {line}"));
            }
            say(
                json,
                format!(
                    "Successfully repaired schema history table {table} (execution time {})",
                    elapsed(started)
                ),
            );
            Ok(json!({"repairActions": done}))
        }
        "undo" => {
            let target = match inv.config.target.as_deref() {
                None | Some("") => None,
                Some(t) => {
                    Some(Version::parse(t).map_err(|_| MigrateError::BadTarget(t.to_string()))?)
                }
            };
            let schema = runner.schema.clone();
            let undone = runner.undo(target.as_ref(), &mut |script| {
                say(
                    json,
                    format!(
                        "Undoing migration of schema \"{schema}\" to version \"{} - {}\"",
                        script
                            .version
                            .as_ref()
                            .map(ToString::to_string)
                            .unwrap_or_default(),
                        script.description
                    ),
                );
            })?;
            say(
                json,
                format!(
                    "Successfully undid {} migration(s) of schema \"{}\" (execution time {})",
                    undone.len(),
                    runner.schema,
                    elapsed(started)
                ),
            );
            Ok(json!({"migrations": undone, "schemaName": runner.schema}))
        }
        "clean" => {
            let done = runner.clean()?;
            for line in &done {
                say(json, line);
            }
            Ok(json!({"schemasCleaned": runner.schemas}))
        }
        other => Err(MigrateError::BadTarget(other.to_string())),
    }
}

fn version_or_empty(info: &Info) -> String {
    info.current
        .as_ref()
        .map_or_else(|| "<< Empty Schema >>".to_string(), ToString::to_string)
}

fn entry_json(e: &Entry) -> Value {
    json!({
        "category": e.category.name(),
        "version": e.version,
        "description": e.description,
        "type": e.kind,
        "installedOnUTC": e.applied.as_ref().map(|r| r.installed_on.clone()),
        "state": e.state.name(),
        "undoable": if e.undoable { "Yes" } else { "No" },
        "filepath": e.script,
        "installedBy": e.applied.as_ref().map(|r| r.installed_by.clone()),
        "installedRank": e.applied.as_ref().map(|r| r.installed_rank),
        "executionTime": e.applied.as_ref().map(|r| r.execution_time),
        "checksum": e.applied.as_ref().and_then(|r| r.checksum),
    })
}

/// Flyway's info table.
fn info_table(info: &Info) -> String {
    let header = [
        "Category",
        "Version",
        "Description",
        "Type",
        "Installed On",
        "State",
        "Undoable",
    ];
    let rows: Vec<[String; 7]> = info
        .entries
        .iter()
        .map(|e| {
            [
                e.category.name().to_string(),
                e.version.clone().unwrap_or_default(),
                e.description.clone(),
                e.kind.clone(),
                e.applied
                    .as_ref()
                    .map(|r| r.installed_on.clone())
                    .unwrap_or_default(),
                e.state.name().to_string(),
                if e.undoable { "Yes" } else { "No" }.to_string(),
            ]
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let rule = format!(
        "+{}+",
        widths
            .iter()
            .map(|w| "-".repeat(w + 2))
            .collect::<Vec<_>>()
            .join("+")
    );
    let line = |cells: &[String]| {
        format!(
            "| {} |",
            cells
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c}{}", " ".repeat(w - c.chars().count())))
                .collect::<Vec<_>>()
                .join(" | ")
        )
    };
    let mut out = vec![rule.clone(), line(&header.map(String::from)), rule.clone()];
    if rows.is_empty() {
        let inner = rule.len() - 4;
        out.push(format!("| {:<inner$} |", "No migrations found"));
    }
    out.extend(rows.iter().map(|r| line(r)));
    out.push(rule);
    out.join("\n")
}
